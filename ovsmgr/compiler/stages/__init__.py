"""One module per pipeline stage; each is a pure function from the policy to flows."""
