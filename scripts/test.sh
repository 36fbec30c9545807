#!/usr/bin/env bash
# Runs every test of the workspace, the TPM platform's included: installs what the tests need
# when it is missing (scripts/test-deps.sh), then `cargo test` with the `tpm` feature.
# Extra arguments go to cargo test (e.g. `-- restart`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-deps.sh
exec cargo test --workspace --locked --features custos/tpm "$@"
