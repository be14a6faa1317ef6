"""The numerical core of BETTER: kernels, combiners and finalizers. No I/O lives here."""
