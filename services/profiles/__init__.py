"""The profiles service: the SQL store of users, items, interactions, impressions and counters."""
