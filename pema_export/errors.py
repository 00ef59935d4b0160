"""The exception types a user can see. The CLI turns each into one line and exit code 2."""


class PemaError(Exception):
    """Base of every failure that is the input's fault, not a bug; its message is what the user reads."""


class CorpusError(PemaError):
    """A corpus file is missing, unreadable, malformed or unusable for the job."""


class ModelError(PemaError):
    """The model cannot be found, loaded or handled."""


class TokenizerError(PemaError):
    """The tokenizer is missing, not a fast tokenizer, or of a family we cannot prune."""


class TargetError(PemaError):
    """A target profile is unknown or malformed."""


class VerificationError(PemaError):
    """The exported bundle does not answer as the fine-tuned model does; nothing was written."""


class OutputError(PemaError):
    """The output location cannot be written."""


class DeviceError(PemaError):
    """The device or precision asked for is not on this machine or not usable in this launch, or a process of a
    data-parallel launch failed; nothing was written."""
