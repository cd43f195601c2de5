"""What guards the port: TLS certificates (``tls``), API keys and their scopes and rate limits (``keys``,
``rate_limit``), and the ``attnserve-server keys`` command (``keys_cli``). No gRPC servicer lives here:
the gRPC side of API keys is ``attnserve_server.api.auth``."""
