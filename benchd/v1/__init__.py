"""Generated gRPC stubs for benchd.v1 (regenerate with scripts/gen_protos.sh; do not edit)."""
