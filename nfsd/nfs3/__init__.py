"""The 22 NFSv3 procedures (RFC 1813), one module per family, over the Tree interface."""
