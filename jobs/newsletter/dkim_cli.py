"""``martech dkim``: the DNS TXT record to publish for the configured DKIM key (or a new key)."""

from __future__ import annotations

from pathlib import Path

import click

from scheduler.cli import State, friendly_errors
from scheduler.delivery.dkim import generate_key, signer_from_settings, txt_chunks
from scheduler.errors import MartechError


@click.command()
@click.option("--new-key", "new_key", type=click.Path(path_type=Path),
              help="Write a new 2048-bit RSA key to this file (owner-only) first.")
@click.pass_obj
@friendly_errors
def dkim(state: State, new_key: Path | None) -> None:
    """Print the DKIM DNS TXT record for MARTECH_DKIM_PRIVATE_KEY_FILE / _SELECTOR / _DOMAIN."""
    settings = state.settings
    if new_key is not None:
        if new_key.exists():
            raise MartechError(f"{new_key} exists; refusing to overwrite a key")
        generate_key(new_key)
        click.echo(f"wrote a new 2048-bit RSA key to {new_key} (mode 0600); set "
                   f"MARTECH_DKIM_PRIVATE_KEY_FILE={new_key}", err=True)
        settings = settings.model_copy(update={"dkim_private_key_file": new_key})
    signer = signer_from_settings(settings)
    if signer is None:
        raise MartechError("MARTECH_DKIM_PRIVATE_KEY_FILE is not set (or pass --new-key FILE)")
    value = signer.txt_record()
    quoted = " ".join(f'"{chunk}"' for chunk in txt_chunks(value))
    click.echo(f"{signer.record_name}. IN TXT {quoted}")


def register(group: click.Group) -> None:
    group.add_command(dkim)
