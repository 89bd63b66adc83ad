"""XDR codec and the protocol types of ONC RPC, portmap/rpcbind, MOUNT v3 and NFS v3. No I/O."""
