"""Service errors become a sentence for the user (`gr.Error`) and a log line with context."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

from .. import errors

log = logging.getLogger(__name__)

ADVICE = {
    errors.ModelNotFound: "Pick another model in the list, or add its folder under “Add a model”.",
    errors.ModelTooLarge: "Unpin or unload a model in the Servers tab, or raise the memory for models there.",
    errors.ModelLoadFailed: "The folder may be incomplete, or hold a model type this mlx-lm / mlx-vlm cannot run.",
    errors.DemoModelUnavailable: "Check that this machine can reach PyPI, or pick another model.",
    errors.InvalidImage: "The conversation is unchanged.",
    errors.InvalidAttachment: "The conversation is unchanged.",
    errors.ImportFailed: "Nothing was imported.",
    errors.ImageNeedsVisionModel: "Pick a vision model (marked “vision” in the model list) to chat about images.",
    errors.ConversationNotFound: "It may have been deleted in another tab; start a new chat.",
    errors.GenerationFailed: "Try again, or pick another model.",
    errors.StoreWriteFailed: "Free some disk space or fix the folder's permissions, then try again; "
                             "nothing that was saved before is lost.",
    errors.ReplyInProgress: "Wait for it to finish, or stop it in the tab that started it.",
    errors.Busy: "Try again in a minute.",
    errors.HubUnreachable: "Check the internet connection; the models on this machine still work.",
    errors.HubRateLimited: "Try again in a minute; a token raises the limit.",
    errors.RepoNotFound: "Check the name, or set a token if it is a private repository.",
    errors.NotEnoughSpace: "Free some disk space (delete a model under “On this machine”) and try again.",
    errors.DownloadInProgress: "Its progress is under Downloads.",
    errors.StoreReadFailed: "Try again in a moment; if it stays, check the data dir's permissions.",
    errors.ApiStartFailed: "Nothing else changed; the chat works as before.",
    errors.ServerStartFailed: "Free some disk space, or check that the data dir's servers folder can be written.",
}


# A URL, and an absolute path of two parts or more (a path's last part is kept: it names the model or file).
URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"“”<>()]+")
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\'\"“”<>()]+){2,}[/\\]?")


def public(text: str) -> str:
    """`text` as a guest may see it: no path or URL of the owner's machine (a path becomes its last part, a URL
    "the server")."""
    text = URL.sub("the server", text)
    return ABSOLUTE_PATH.sub(lambda m: re.split(r"[/\\]", m[0].rstrip("/\\"))[-1], text)


# What a user asked that cannot be done as asked (the sentence tells them why): not trouble with the app.
USER_INPUT = (errors.ChatEditError, errors.ImportFailed, errors.InvalidImage, errors.InvalidAttachment,
              errors.ImageNeedsVisionModel, errors.ContextTooLong, errors.ReplyInProgress, errors.ProfileInvalid,
              errors.ApiKeyRefused)


def message_for(exc: errors.AppError, guest: bool = False) -> str:
    """The sentence a user sees for a service error (without paths and URLs for a guest)."""
    advice = next((text for kind, text in ADVICE.items() if isinstance(exc, kind)), "")
    message = f"{exc} {advice}".strip()
    return public(message) if guest else message


@contextmanager
def user_errors(action: str) -> Iterator[None]:
    """Log a service error with what was being done, and re-raise it as a `gr.Error`."""
    try:
        yield
    except errors.AppError as exc:
        level = (logging.ERROR if isinstance(exc, errors.StoreWriteFailed)
                 else logging.INFO if isinstance(exc, USER_INPUT) else logging.WARNING)
        log.log(level, "%s failed: %s", action, exc)
        raise gr.Error(message_for(exc), title=f"Could not {action}") from exc
