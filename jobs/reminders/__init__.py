"""Social-post reminders: the copy, network and link, sent to the social team before a post."""
