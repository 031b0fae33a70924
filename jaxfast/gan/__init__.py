"""Generative models (lesson 7): restoration losses and metrics, GAN critics, WGAN, pure GAN steps."""
