"""One exception family for everything a user can get wrong; the CLI turns it into a one-line error."""


class LlmpruneError(Exception):
    """A problem with the user's input or environment, worded for the user (one line, says what is allowed)."""


def did_you_mean(word: str, choices) -> str:
    """' Did you mean 'x'?' when a close match exists, else ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown(kind: str, word: str, choices) -> LlmpruneError:
    """Error for a name not in a registry: `Unknown method 'wandda'. Did you mean 'wanda'? Available: ...`."""
    choices = sorted(choices)
    return LlmpruneError(f"Unknown {kind} '{word}'.{did_you_mean(word, choices)} Available: {', '.join(choices)}")
