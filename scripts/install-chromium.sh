#!/bin/sh
# Installs Debian's chromium for the console's browser test (e2e/console_test.go),
# unless /usr/bin/chromium is already there. `make test` runs it first.
set -eu
if [ -x /usr/bin/chromium ]; then
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-chromium: no /usr/bin/chromium and no apt-get: install Chromium by hand for the console browser test" >&2
	exit 1
fi
SUDO=
if [ "$(id -u)" != 0 ]; then
	SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium
/usr/bin/chromium --version
