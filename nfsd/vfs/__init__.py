"""The exported tree: fileids and handles, the Real layer, and the interface NFS calls through."""
