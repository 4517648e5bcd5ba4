"""The AWS KMS wire protocol (DESIGN.md section 6a): AWS JSON 1.1 on the listener of the API.

boto3, the AWS CLI, the AWS Encryption SDK and SOPS call it unchanged. It serves the same keys,
blobs, authorization and audit as the native API (:mod:`kms_operator.api`), which it does not
import: both are front ends over :mod:`kms_operator.serving` and the key service.
:func:`.routes.front_end` is what the composition root mounts.
"""
