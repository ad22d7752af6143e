"""Mail that comes back: bounces (RFC 3464 and the rest), complaints (ARF), mailto: unsubscribes.

``parse`` reads a message into facts; ``smtp_server`` and ``imap_poller`` receive messages and
hand them to a kind's handler. Nothing here knows what a newsletter or a delivery row is.
"""
