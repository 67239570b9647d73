#!/usr/bin/env bash
# Installs the platform from its tarball (scripts/package), as root:
#   ./install.sh            binaries in /usr/local/bin, units in /etc/systemd/system,
#                           the system user, example configuration in /etc/consult
#                           (never over a file already there), docs in
#                           /usr/local/share/doc/consult
#   DESTDIR=/tmp/x ./install.sh   the same under /tmp/x (nothing run, for checking)
# Then edit /etc/consult/consult.toml and: systemctl enable --now consult
# (and sfu on media nodes; coturn with infra's turnserver.conf, see doc/coturn-README.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${DESTDIR:-}"
install -d "$dest/usr/local/bin" "$dest/etc/systemd/system" \
  "$dest/usr/lib/sysusers.d" "$dest/etc/consult" "$dest/etc/sysctl.d" \
  "$dest/usr/local/share/doc/consult/examples" "$dest/usr/local/share/doc/consult/monitoring"
install -m 0755 "$here/bin/consult" "$here/bin/sfu" "$dest/usr/local/bin/"
install -m 0644 "$here/systemd/consult.service" "$here/systemd/sfu.service" "$dest/etc/systemd/system/"
install -m 0644 "$here/systemd/consult.sysusers" "$dest/usr/lib/sysusers.d/consult.conf"
# coturn's unit and the 443 drop-in are examples: they replace or widen what is there.
install -m 0644 "$here/systemd/coturn.service" "$here/systemd/consult.service.d/https-443.conf" \
  "$here/etc/"* "$dest/usr/local/share/doc/consult/examples/"
install -m 0644 "$here/doc/"* "$dest/usr/local/share/doc/consult/"
install -m 0644 "$here/monitoring/"* "$dest/usr/local/share/doc/consult/monitoring/"
for f in consult.toml sfu.env; do
  [ -e "$dest/etc/consult/$f" ] || install -m 0640 "$here/etc/$f" "$dest/etc/consult/$f"
done
[ -e "$dest/etc/sysctl.d/99-consult-media.conf" ] || install -m 0644 "$here/etc/99-consult-media.conf" "$dest/etc/sysctl.d/"
if [ -z "$dest" ]; then
  systemd-sysusers
  chgrp consult /etc/consult/consult.toml
  sysctl --system >/dev/null
  systemctl daemon-reload
  echo "installed; edit /etc/consult/consult.toml, then: systemctl enable --now consult"
else
  echo "installed under $dest"
fi
