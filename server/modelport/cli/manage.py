"""Client verbs for models, keys, tokens and the audit trail."""

from __future__ import annotations

import click

from modelport.cli.common import client_options, console, json_option, print_json, print_table


@click.command()
@client_options
@json_option
def models(client, as_json: bool) -> None:
    """List the models."""
    page = client.models(limit=500)
    if as_json:
        return print_json(page)
    rows = [
        {
            **m,
            "serving": (m["deployment"] or {}).get("build"),
            "status": (m["deployment"] or {}).get("status", "—"),
        }
        for m in page["items"]
    ]
    print_table(
        rows,
        [
            ("name", "name"),
            ("description", "description"),
            ("serving", "build"),
            ("status", "status"),
            ("auth", "auth"),
            ("owner", "owner"),
        ],
    )


@click.group()
def model() -> None:
    """Create, show, change or delete one model."""


@model.command("create")
@click.argument("name")
@click.option("--description", default="")
@click.option("--no-auth", is_flag=True, help="Anyone may call it, without a key.")
@client_options
@json_option
def model_create(client, name: str, description: str, no_auth: bool, as_json: bool) -> None:
    """Create a model; prints its access key once."""
    created = client.create_model(name, description, auth=not no_auth)
    if as_json:
        return print_json(created)
    console.print(f"created [bold]{name}[/bold]; access key (shown once): {created['access_key']}")


@model.command("show")
@click.argument("name")
@client_options
def model_show(client, name: str) -> None:
    """Show one model as JSON."""
    print_json(client.model(name))


def _rate(value: str | None) -> float | str | None:
    if value is None:
        return "unchanged"
    if value.lower() in ("none", "off", "0"):
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(
            f"a number of requests a second, or 'none'; got {value!r}"
        ) from None


@model.command("update")
@click.argument("name")
@click.option("--description", help="A new description.")
@click.option(
    "--auth/--no-auth",
    default=None,
    help="Whether callers need the access key or a token (--no-auth: anyone may call).",
)
@click.option(
    "--rate-limit", help="Requests a second per key (or client address); 'none': no limit."
)
@click.option("--burst", type=int, help="Requests above the rate a key may send at once.")
@client_options
@json_option
def model_update(
    client,
    name: str,
    description: str | None,
    auth: bool | None,
    rate_limit: str | None,
    burst: int | None,
    as_json: bool,
) -> None:
    """Change a model's description, auth flag or rate limit; what is not given stays."""
    changes: dict = {
        k: v
        for k, v in (("description", description), ("auth", auth), ("rate_limit_burst", burst))
        if v is not None
    }
    rate = _rate(rate_limit)
    if rate != "unchanged":
        changes["rate_limit_per_s"] = rate
        if rate is None:
            changes["rate_limit_burst"] = None
    if not changes:
        raise click.UsageError(
            "nothing to change: give --description, --auth/--no-auth, --rate-limit or --burst"
        )
    updated = client.update_model(name, **changes)
    if as_json:
        return print_json(updated)
    limit = updated.get("rate_limit_per_s")
    console.print(
        f"{name}: auth {'on' if updated['auth'] else 'off'}, rate limit "
        + (f"{limit:g}/s (burst {updated.get('rate_limit_burst')})" if limit else "none")
    )


@model.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask.")
@client_options
def model_delete(client, name: str, yes: bool) -> None:
    """Delete a model and its builds (it must be stopped)."""
    if not yes:
        click.confirm(f"Delete model {name} and all its builds?", abort=True)
    client.delete_model(name)
    console.print(f"deleted {name}")


@click.group()
def keys() -> None:
    """Model access keys."""


@keys.command("rotate")
@click.argument("name")
@client_options
@json_option
def keys_rotate(client, name: str, as_json: bool) -> None:
    """A new access key for a model; the old one stops working at once."""
    key = client.rotate_key(name)
    if as_json:
        return print_json(key)
    console.print(f"new access key for {name} (shown once): {key['access_key']}")


@click.group()
def tokens() -> None:
    """API tokens (admin)."""


@tokens.command("list")
@client_options
@json_option
def tokens_list(client, as_json: bool) -> None:
    """List the tokens that are not revoked."""
    page = client.tokens()
    if as_json:
        return print_json(page)
    print_table(
        page["items"],
        [
            ("id", "id"),
            ("name", "name"),
            ("role", "role"),
            ("models", "models"),
            ("expires_at", "expires"),
            ("last_used_at", "last used"),
        ],
    )


@tokens.command("create")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(["admin", "deployer", "viewer", "predict"]), required=True
)
@click.option("--expires-in-days", type=float, default=365, show_default=True)
@click.option("--model", "models_", multiple=True, help="For role predict: the models it may call.")
@client_options
@json_option
def tokens_create(client, name, role, expires_in_days, models_, as_json) -> None:
    """Issue a token; prints the secret once."""
    created = client.create_token(name, role, expires_in_days, list(models_))
    if as_json:
        return print_json(created)
    console.print(f"token {created['id']} ({role}), shown once: {created['token']}")


@tokens.command("revoke")
@click.argument("token_id")
@client_options
def tokens_revoke(client, token_id: str) -> None:
    """Revoke a token at once."""
    client.revoke_token(token_id)
    console.print(f"revoked {token_id}")


@click.command()
@click.option("--model", "model_name", help="Only this model.")
@client_options
@json_option
def audit(client, model_name: str | None, as_json: bool) -> None:
    """Who did what to which model, when."""
    page = client.audit(model=model_name, limit=200)
    if as_json:
        return print_json(page)
    print_table(
        page["items"],
        [
            ("at", "when"),
            ("actor", "who"),
            ("action", "action"),
            ("model", "model"),
            ("target", "target"),
            ("detail", "detail"),
        ],
    )


COMMANDS = [models, model, keys, tokens, audit]
