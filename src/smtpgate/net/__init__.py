"""What smtpgate's clients share, whoever the client is (remote lookups, the next hop, LDAP):
a bounded line stream with a safe STARTTLS upgrade, the client TLS context, the SMTP reply reader and
one-line error descriptions. Neutral ground: it imports neither ``lookup`` nor ``delivery`` nor
``server``, so those never import each other's implementations to reuse a socket helper."""
