"""The names users and clusters see (DESIGN.md section 1), in one place.

Every module that writes or reads an object, an annotation, a label, a finalizer or a Secret of
ours takes the name from here, so a rename is one edit and ``grep`` finds every use. It imports
nothing: the domain, the Kubernetes edge and the CLIs all may use it.
"""

from __future__ import annotations

PREFIX = "kms.cmk.dev/"

GROUP = "kms.cmk.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

CMK_KIND = "CustomerMasterKey"
CMK_PLURAL = "customermasterkeys"
KMI_KIND = "KeyMaterialImport"
KMI_PLURAL = "keymaterialimports"
DK_KIND = "DataKey"
DK_PLURAL = "datakeys"

# -- annotations ---------------------------------------------------------------------------
#: On a CMK, a new value rotates the key now (kmsctl rotate sets a timestamp).
ROTATE_ANNOTATION = PREFIX + "rotate"
#: ``true`` on a terminating CMK cancels its scheduled deletion.
CANCEL_DELETION_ANNOTATION = PREFIX + "cancel-deletion"
#: On a CMK the operator recreates (and for users re-binding a kept key to a new object): the
#: key id the object takes over. On a DataKey Secret: the key the ciphertext is under.
KEY_ID_ANNOTATION = PREFIX + "key-id"
#: On a DataKey Secret: the key version the ciphertext was made under.
KEY_VERSION_ANNOTATION = PREFIX + "key-version"
#: On a DataKey Secret: the encryption context (JSON) its ciphertext is bound to.
CONTEXT_ANNOTATION = PREFIX + "encryption-context"

# -- labels --------------------------------------------------------------------------------
#: ``true`` on the default key of a service (``alias/kms/<service>``).
DEFAULT_LABEL = PREFIX + "default"
#: On a DataKey Secret: the (possibly shortened) name of the DataKey that owns it.
DATAKEY_LABEL = PREFIX + "datakey"

# -- finalizers ----------------------------------------------------------------------------
#: Holds a CMK while its key waits out the deletion window.
SCHEDULED_DELETION_FINALIZER = PREFIX + "scheduled-deletion"
#: Kopf's own bookkeeping finalizer (its default name is in kopf.zalando.org).
KOPF_FINALIZER = PREFIX + "kopf-finalizer"
#: Prefix of Kopf's progress and last-handled annotations.
KOPF_PREFIX = f"kopf.{GROUP}"

# -- DataKey Secrets -----------------------------------------------------------------------
SECRET_TYPE = PREFIX + "data-key"
SECRET_CIPHERTEXT_KEY = "ciphertext"  # noqa: S105 - a data key name
SECRET_PLAINTEXT_KEY = "plaintext"  # noqa: S105 - a data key name
#: The same two values as base64 text: raw bytes cannot be environment variables (runc refuses
#: NUL, the CRI wants UTF-8), so pods that take the data key through ``env`` read these.
SECRET_CIPHERTEXT_TEXT_KEY = "ciphertextBase64"  # noqa: S105 - a data key name
SECRET_PLAINTEXT_TEXT_KEY = "plaintextBase64"  # noqa: S105 - a data key name
#: Encryption context entries the operator adds to every DataKey's ciphertext.
NAMESPACE_CONTEXT = PREFIX + "namespace"
DATAKEY_CONTEXT = PREFIX + "datakey"

# -- AWS CreateKey tags -----------------------------------------------------------------
#: The CustomerMasterKey's name (else ``key-<8 hex digits>``).
NAME_TAG = PREFIX + "name"
#: The namespace the CustomerMasterKey is created in (else the caller's).
NAMESPACE_TAG = PREFIX + "namespace"

# -- RBAC verbs (DESIGN.md 6: what a caller must hold on the object) ------------------------
#: The crypto verbs on customermasterkeys, which only this KMS gives a meaning.
VERB_ENCRYPT = "encrypt"
VERB_DECRYPT = "decrypt"
VERB_GENERATE_DATA_KEY = "generatedatakey"
#: Kubernetes' own verbs, needed where a call reads or writes objects as ``kubectl`` would.
VERB_GET = "get"
VERB_LIST = "list"
VERB_CREATE = "create"
VERB_PATCH = "patch"
VERB_DELETE = "delete"

# -- the API -------------------------------------------------------------------------------
#: The audience ServiceAccount tokens for the KMS API are made for, unless configured.
TOKEN_AUDIENCE = GROUP
#: Where a pod mounts its projected KMS token (README: the pod volume).
PROJECTED_TOKEN_PATH = f"/var/run/secrets/{GROUP}/token"
#: The ValidatingWebhookConfiguration the operator fills in (the chart creates it empty).
WEBHOOK_CONFIGURATION = GROUP
MANAGED_BY = "kms-operator"
