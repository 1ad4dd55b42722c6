"""The asyncpg adapter: JSON codecs, all SQL, the transaction runner and the three stores."""
