"""The exception types a user can see. The CLI turns each into one line and exit code 2."""


class PemaError(Exception):
    """Base of every failure that is the input's fault, not a bug; its message is what the user reads."""


class UsageError(PemaError):
    """The command line itself is wrong: an unknown option, a missing argument, a value of the wrong type."""


class TrainingError(PemaError):
    """Fine-tuning did not produce a usable model (its weights are no longer finite)."""


class IncompleteBundleError(PemaError):
    """A bundle folder does not hold what its manifest says: an export was interrupted while moving files in."""


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


class InGraphTokenizerError(PemaError):
    """The tokenizer cannot be put in the graph exactly (--tokenizer in-graph), or onnxruntime-extensions cannot run it."""


class DeviceError(PemaError):
    """The device or precision asked for is not on this machine or not usable in this launch, or a process of a
    data-parallel launch failed; nothing was written."""
