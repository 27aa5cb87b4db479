"""API errors: rendered as JSON ``{Code, Message, RequestId}`` with an HTTP status."""


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def invalid_parameter(name: str, why: str) -> ApiError:
    return ApiError(400, f"InvalidParameter.{name}", f"parameter {name}: {why}")
