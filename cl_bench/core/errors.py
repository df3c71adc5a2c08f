"""The errors a user can act on, shared by every part of the package."""


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and what is allowed."""


OMEGACONF_DETAIL = ("full_key:", "object_type=", "reference_type=")  # lines OmegaConf adds to its messages


def one_line(error: BaseException) -> str:
    """An error as one line: its message's lines joined (OmegaConf's key and type lines left out), the
    config key it names, or its type when it has no message."""
    lines = [line.strip() for line in str(error).splitlines()]
    text = " ".join(line for line in lines if line and not line.startswith(OMEGACONF_DETAIL))
    key = getattr(error, "full_key", None)
    return (text or type(error).__name__) + (f" (at {key})" if key and str(key) not in text else "")
