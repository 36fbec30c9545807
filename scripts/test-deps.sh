#!/usr/bin/env bash
# Installs, from Debian's packages, what the test suite needs beyond Rust and a C compiler,
# when it is missing (as root, or through sudo):
#   * libtss2-dev + pkg-config: the TPM 2.0 platform (feature `tpm` of custos-tee-host) links libtss2;
#   * swtpm, swtpm-tools: the software TPM the TPM tests start on loopback ports;
#   * softhsm2: the PKCS#11 token the admin-key test signs approvals with;
#   * python3 with venv: embit (from the Python package index, pinned), the independent
#     wallet the Bitcoin external signer's test builds PSBTs and checks descriptors with,
#     in a virtual environment of its own ($HOME/.cache/custos/py), with prometheus_client
#     (pinned), the independent OpenMetrics parser the metrics test reads /metrics with;
#   * Node.js with npm: anvil and cast (npm @foundry-rs/anvil and @foundry-rs/cast) and ethers,
#     pinned, the Ethereum node and stock clients of the Ethereum signer's test, and
#     @ngraveio/bc-ur, the independent Uniform Resources implementation the QR channel's test
#     checks its parts against ($HOME/.cache/custos/node);
#   * zbar-tools: zbarimg, the independent QR decoder that reads the frames Custos draws;
#   * chromium, with playwright-core and axe-core (npm, pinned, no browser download): the
#     headless browser the approvers' console's test drives with a virtual WebAuthn
#     authenticator, and the accessibility checker it runs in the console's pages.
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists tss2-esys tss2-tctildr 2>/dev/null || need+=(libtss2-dev)
command -v swtpm >/dev/null 2>&1 || need+=(swtpm swtpm-tools)
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3 python3-venv)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
command -v zbarimg >/dev/null 2>&1 || need+=(zbar-tools)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

venv="$HOME/.cache/custos/py"
if ! "$venv/bin/python" -c 'import embit, prometheus_client' >/dev/null 2>&1; then
  echo "installing embit and prometheus_client into $venv" >&2
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q embit==0.8.0 prometheus_client==0.21.1
fi

node="$HOME/.cache/custos/node"
if ! [ -x "$node/node_modules/.bin/anvil" ] || ! [ -x "$node/node_modules/.bin/cast" ] ||
  ! [ -d "$node/node_modules/ethers" ] || ! [ -d "$node/node_modules/@ngraveio/bc-ur" ]; then
  echo "installing anvil, cast, ethers and bc-ur into $node" >&2
  mkdir -p "$node"
  # anvil's and cast's versions are also custos::foundry::PACKAGES.
  npm install --prefix "$node" --no-audit --no-fund --silent \
    @foundry-rs/anvil@1.7.1 @foundry-rs/cast@1.7.1 ethers@6.16.0 @ngraveio/bc-ur@1.1.13
fi
if ! [ -d "$node/node_modules/playwright-core" ] || ! [ -d "$node/node_modules/axe-core" ]; then
  echo "installing playwright-core and axe-core into $node" >&2
  mkdir -p "$node"
  npm install --prefix "$node" --no-audit --no-fund --silent \
    playwright-core@1.65.2 axe-core@4.14.1
fi
