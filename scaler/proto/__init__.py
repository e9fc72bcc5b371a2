"""KEDA's external scaler protocol: the vendored .proto and the stubs generated from it.

The *_pb2*.py files are generated and committed (see scaler/README.md for the command), so installing Kapa
needs no protoc; pyproject pins protobuf and grpcio at or above the versions that generated them.
"""
