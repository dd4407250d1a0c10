"""Validates a provenance statement against in-toto's published definitions
(the in-toto-attestation package from PyPI): the Statement and the SLSA v1
Provenance predicate parsed strictly from JSON (an unknown or mistyped field
fails), the Statement's own validation, every ResourceDescriptor's, and
SLSA v1's required fields."""
import json
import sys

from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement

doc = json.load(open(sys.argv[1]))
stmt = json_format.ParseDict(doc, statement_pb2.Statement())
Statement.copy_from_pb(stmt).validate()
assert stmt.predicate_type == "https://slsa.dev/provenance/v1", stmt.predicate_type
prov = json_format.ParseDict(doc["predicate"], provenance_pb2.Provenance())
assert prov.build_definition.build_type, "buildType is required"
assert prov.build_definition.HasField("external_parameters"), "externalParameters is required"
assert prov.run_details.builder.id, "builder.id is required"
for rd in list(prov.build_definition.resolved_dependencies) + list(prov.run_details.byproducts):
    ResourceDescriptor.copy_from_pb(rd).validate()
print("valid", len(prov.build_definition.resolved_dependencies), len(prov.run_details.byproducts))
