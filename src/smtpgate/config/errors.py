"""The single exception every configuration problem becomes."""


class ConfigError(Exception):
    """``Configuration error: <key path>: <reason>`` -- printed as one line, exit status 1."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason

    def line(self) -> str:
        return f"Configuration error: {self.key}: {self.reason}"
