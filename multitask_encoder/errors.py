"""The base of every error this package raises on purpose (bad input, a refused run or command): a caller or a
command catches them all with `except MultiTaskEncoderError`. Each area has its subclass where the area lives
(DataError, ReadError, ConfigError, LabelError, RunMismatch, TeacherError, InterpolationError, PushError,
BatchPredictError); those that were ValueErrors still are. The model files (model/) raise ValueError: they travel
without this package."""


class MultiTaskEncoderError(Exception):
    """A refusal of this package, with the problem (the task, the row, the file) in its message."""
