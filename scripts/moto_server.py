"""moto's standalone server (S3 and DynamoDB on one port) for Weir's tests, with DynamoDB
requests applied one at a time.

Why: moto applies a TransactWriteItems by deep-copying the tables first and, when a condition
fails, restoring that copy. Under the stock threaded server, a transaction that fails while
another request commits restores the old copy and silently erases the other writer's committed
change (seen: two winners of one conditional index commit). Real DynamoDB is linearizable
per item, so the tests serialize DynamoDB calls; S3 calls stay concurrent.

Usage: python scripts/moto_server.py HOST PORT
"""

import sys
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

_dynamodb = threading.Lock()
_moto = DomainDispatcherApplication(create_backend_app)


def app(environ, start_response):
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
        with _dynamodb:
            # Produce the whole response under the lock.
            return list(_moto(environ, start_response))
    return _moto(environ, start_response)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    run_simple(host, port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
