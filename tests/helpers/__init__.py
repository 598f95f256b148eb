"""What the tests share: composing configs, fake dataset trees, image files, fault-injecting callbacks."""
