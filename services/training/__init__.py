"""The training job: fits ranking's models outside serving, writes and publishes a bundle."""
