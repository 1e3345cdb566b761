"""The Slack adapter (slack-bolt): build the app, serve it at `POST /slack/events` or over Socket Mode."""

from adapters.slack.app import build_slack_app, slack_asgi_handler, slack_routes, start_socket_mode
from adapters.slack.render import to_blocks, to_text

__all__ = [
    "build_slack_app", "slack_asgi_handler", "slack_routes", "start_socket_mode", "to_blocks", "to_text",
]
