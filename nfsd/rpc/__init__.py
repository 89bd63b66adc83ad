"""ONC RPC machinery: record marking, dispatch, duplicate-request cache, transports, client."""
