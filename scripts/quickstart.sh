#!/usr/bin/env bash
# Quick start: set everything up, then run kiln's main job on its embedded default — build the bundled example
# (examples/hello) from a busybox base made locally, into the local image store ($KILN_HOME), and show it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
kiln() { node bin/kiln.js "$@"; }
kiln bootstrap busybox
kiln build -t hello:latest examples/hello
kiln images
kiln inspect hello:latest --config
