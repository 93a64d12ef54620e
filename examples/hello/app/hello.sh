#!/bin/sh
# Prints the greeting baked into the image at build time.
set -eu
cat "${GREETING_FILE:-/app/greeting.txt}"
echo "running as $(id -u):$(id -g) in $(pwd)"
