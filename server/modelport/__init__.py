"""modelport: a Python function in a folder becomes a versioned, load-balanced REST API."""

__version__ = "0.1.0"
__all__ = ["Client", "__version__", "track_metric"]


def __getattr__(name: str):
    # Lazy on purpose: inside a replica only `modelport.runtime` (stdlib + msgspec) exists,
    # so `from modelport import track_metric` must not import the server.
    if name == "track_metric":
        from modelport.runtime.context import track_metric

        return track_metric
    if name == "Client":
        from modelport.client import Client

        return Client
    raise AttributeError(name)
