"""Pack a folder's wheels into one tar with fixed metadata: the same wheels give the same bytes,
so copying the archive to a host changes nothing when nothing changed, in one transfer."""

import os
import sys
import tarfile

folder, archive = sys.argv[1], sys.argv[2]
partial = archive + ".partial"
with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".whl"):
            continue
        path = os.path.join(folder, name)
        info = tar.gettarinfo(path, arcname=name)
        info.mtime, info.mode = 315532800, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        with open(path, "rb") as wheel:
            tar.addfile(info, wheel)
os.replace(partial, archive)
