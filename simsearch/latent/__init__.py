"""The latent space, seen and used: ``map`` (2-D maps of a collection's or a folder's embeddings, as a page, a
picture and a table), ``images`` (reconstructions, interpolations, samples, denoising), ``anomaly`` (scores by
reconstruction error or by distance to the nearest neighbours, and the threshold fitted on training images),
``stability`` (how embeddings, neighbours, reconstructions and the latent tensors' ranks move under input noise).
"""
