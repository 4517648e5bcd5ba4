"""``KeyMaterialImport``: AWS KMS's ImportKeyMaterial flow as a resource.

* create / update / resume: resolve ``spec.keyRef`` to an EXTERNAL key, issue import
  parameters once (wrapping public key + import token in status), and when the spec carries the
  wrapped material (inline in ``spec.encryptedKeyMaterial``, or in the Secret named by
  ``spec.encryptedKeyMaterialSecretRef``), import it (phase ``Imported``);
* ``kmi-expiry`` daemon: sleeps until the parameters' or the material's expiry (dates from the
  status and the store, re-read often) and shows phase ``Expired``; the store's own timer
  (:mod:`..scheduling`) deletes expired material;
* ``kmi-delete``: deleting the object deletes the material it imported, unless another live
  KeyMaterialImport holds the same version (the same material imported again). The key named
  by ``status.keyId`` must be the import's own (same namespace, the key ``spec.keyRef`` names
  now, not detached): status can be written by others, so a mismatch is a Warning Event and
  no material is touched.

One object is one import: parameters are issued once and are not renewed. Expired parameters
or a spec change after the import are answered by creating a new KeyMaterialImport. Decisions
read the state the operator wrote (phase, key version, parameters, ``Synced``), never the text
of a reason.

Modules: :mod:`.handlers` (Kopf's edge), :mod:`.importing` (one create/update/resume step),
:mod:`.decisions` (reasons, next step, key problems, failures, expiry), :mod:`.views` (spec and
status as read), :mod:`.expiry` (the daemon's step), :mod:`.deletion`, :mod:`.redaction` (wrapped
material out of Kopf's log lines).
"""

from . import handlers as handlers  # registers the Kopf handlers
from . import redaction as redaction  # installs the log filter on Kopf's logger
