"""Hospital interfaces: HL7 v2 over MLLP and DICOM in, FHIR out (one module per protocol)."""
