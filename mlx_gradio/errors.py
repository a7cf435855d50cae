"""Typed exceptions the services raise; the controller turns each into a sentence for the user."""


class AppError(Exception):
    """Base of every error a service raises on purpose."""


class ModelNotFound(AppError):
    """No model folder or known model answers to the given name or path."""


class ModelLoadFailed(AppError):
    """A model folder exists but mlx-lm or mlx-vlm could not load it."""


class UnsupportedGGUF(AppError):
    """A GGUF file uses an architecture, tensor type or tokenizer the importer cannot convert."""


class DemoModelUnavailable(AppError):
    """The built-in demo model could not be fetched or converted."""


class InvalidImage(AppError):
    """An upload is not a readable image, or is too large to decode safely."""


class ImageNeedsVisionModel(AppError):
    """An image was sent to a model that only reads text."""


class ConversationNotFound(AppError):
    """No saved conversation has the given id."""


class GenerationFailed(AppError):
    """The model raised while generating a reply."""


class InvalidAttachment(AppError):
    """An attached file is not text the model can read, or is too large."""


class ImportFailed(AppError):
    """A file to import is not a conversation this app can read."""


class ChatEditError(AppError):
    """A regenerate, edit or version switch the conversation cannot take."""


class StoreWriteFailed(AppError):
    """Saving to disk failed (disk full, permissions, ...); nothing in memory changed."""


class AccessDenied(AppError):
    """The signed-in user may not do this (a guest asking for an owner's action)."""


class ReplyInProgress(AppError):
    """A reply is already being written into this conversation."""


class Busy(AppError):
    """As many replies are under way as the app takes at once; a guest's next one waits for room."""


class ModelTooLarge(AppError):
    """The model does not fit the memory the engine may use for models, even with every unpinned one unloaded."""


class StructuredOutputUnavailable(AppError):
    """The model's tokenizer cannot be held to a grammar (llguidance reads fast tokenizers only)."""


class ContextTooLong(AppError):
    """The message (with what must come with it) does not fit the model's context."""


class HubUnreachable(AppError):
    """The Hugging Face Hub does not answer (offline, down, blocked)."""


class HubRateLimited(AppError):
    """The Hub refuses more requests for now."""


class RepoNotFound(AppError):
    """No repository with that id on the Hub (or it is private)."""


class GatedRepo(AppError):
    """A gated or private repository and no token with access."""


class HubRequestFailed(AppError):
    """The Hub answered, but refused the request (a file or revision gone, a bad request)."""


class DownloadFailed(AppError):
    """A download stopped for good (or arrived broken); what it fetched stays for a Resume."""


class DownloadInProgress(AppError):
    """That model is already downloading."""


class NotEnoughSpace(AppError):
    """The disk cannot hold what a download needs."""


class TokenRejected(AppError):
    """The Hub did not accept a Hugging Face token."""


class ProfileInvalid(AppError):
    """A server profile that cannot run as it is (port taken, open host without a key, bad arguments)."""


class ServerNotRunning(AppError):
    """No server of this app runs for that profile."""


class ServerStartFailed(AppError):
    """A server's process could not be started (its log folder, its Python, the system's limits)."""


class CopyRefused(AppError):
    """A model copy to other hosts that cannot be made as asked (no host has it, no room, something in the way)."""


class StoreReadFailed(AppError):
    """A saved file could not be read just now (permissions, too many open files); it was left as it is."""


class ApiKeyRefused(AppError):
    """An API key change that cannot be made as asked (an unknown key, the last key of a network API)."""


class ApiStartFailed(AppError):
    """The app's own API could not listen where it was asked to (a port in use, a host without a key)."""
