"""cardmint.server: the gRPC server (storage, catalog, lots, binding, balances).

Built in the server issue; this package exists now so that the layout and the import
namespace are fixed from the start (README: Layout).
"""
