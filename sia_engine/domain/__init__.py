"""The domain: events and their upcasters, the scaffold, the state and its reducer, histories,
integrity. msgspec only, no I/O beyond the store's protocols, and never torch."""
