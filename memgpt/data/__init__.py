"""External data: files to documents to passages in Milvus."""
