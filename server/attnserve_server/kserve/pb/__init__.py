"""Generated KServe v2 (``inference``) protobuf and gRPC stubs. Do not edit: run `make proto`.

They live in their own descriptor pool, so that a process may also import tritonclient, whose
stubs define the same ``inference.*`` symbols in the default pool.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
