"""The crypto store: where keys, their versions and their wrapped material live.

:class:`~kms_operator.store.base.KeyStore` is the interface; :mod:`.sqlite` the embedded
backend; :mod:`.rootkey` the root of trust that wraps every version's material at rest.
"""
