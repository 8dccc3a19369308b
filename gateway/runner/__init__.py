"""Plugin runners on the gateway side: supervised processes (supervisor), the pool the ext-plugins call
through (pool), message glue (calls), and their place in the app's start-up (startup)."""
