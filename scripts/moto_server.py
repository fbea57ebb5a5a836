"""moto's standalone server (S3 and DynamoDB on one port) for Weir's tests, with DynamoDB
requests applied one at a time.

Why: moto applies a TransactWriteItems by deep-copying the tables first and, when a condition
fails, restoring that copy. Under the stock threaded server, a transaction that fails while
another request commits restores the old copy and silently erases the other writer's committed
change (seen: two winners of one conditional index commit). Real DynamoDB is linearizable
per item, so the tests serialize DynamoDB calls; S3 calls stay concurrent.

Also: moto's snapshot before each transaction deep-copies every table it touches, so a
transaction costs time proportional to the table (seconds once an offset index holds a few
thousand entries). With calls serialized, a transaction only needs the items it touches
restored when it fails; the patch below snapshots those items instead of whole tables.

Usage: python scripts/moto_server.py HOST PORT
"""

import copy
import sys
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

def _patch_transactions():
    import moto.dynamodb.models as models
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    class _TablesByReference:
        """moto's `copy` for its DynamoDB module: tables are not copied (touched items are
        saved and restored by the wrapper below); everything else is copied as before."""

        @staticmethod
        def deepcopy(value, memo=None):
            if isinstance(value, Table):
                return value
            return copy.deepcopy(value, memo)

    models.copy = _TablesByReference
    original = DynamoDBBackend.transact_write_items

    def transact_write_items(self, transact_items):
        saved = []
        for entry in transact_items:
            try:
                op_type, op = next(iter(entry.items()))
                table = self.get_table(op["TableName"])
                attrs = op["Item"] if op_type == "Put" else op["Key"]
                hash_key = DynamoType(attrs[table.hash_key_attr])
                range_key = (DynamoType(attrs[table.range_key_attr])
                             if table.range_key_attr else None)
                saved.append((table, hash_key, range_key,
                               copy.deepcopy(table.get_item(hash_key, range_key))))
            except Exception:
                pass  # the original validates the request and reports what is wrong
        try:
            return original(self, transact_items)
        except Exception:
            for table, hash_key, range_key, item in reversed(saved):
                if range_key is None:
                    if item is None:
                        table.items.pop(hash_key, None)
                    else:
                        table.items[hash_key] = item
                else:
                    if item is None:
                        if hash_key in table.items:
                            table.items[hash_key].pop(range_key, None)
                    else:
                        table.items[hash_key][range_key] = item
            raise

    DynamoDBBackend.transact_write_items = transact_write_items


_patch_transactions()
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
