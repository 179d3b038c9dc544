#!/bin/sh
# Build the replay image from local material (debootstrap root file system + this machine's Python
# environment) on a private dockerd and a registry on 127.0.0.1:5000, both kept under build/engine
# and stopped afterwards; prints the pinned `127.0.0.1:5000/mmstore-replay@sha256:…` reference.
# Pass --docker-host unix://SOCK and --registry HOST:PORT to use running ones instead, and --mirror URL
# (or MMSTORE_DEBIAN_MIRROR) to fetch Debian packages from another mirror than debootstrap's default.
# Replays use the image once MMSTORE_REPLAY_IMAGES lists 127.0.0.1:5000/mmstore-replay.
set -eu
cd "$(dirname "$0")/../.."
exec "${PYTHON:-.venv/bin/python}" -m envs.image "$@"
