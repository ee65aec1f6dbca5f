"""The stream contract: what a valid entry is, and the decoders that check it (one entry at a
time in `reading`, a batch at once in `columns`, straight from read replies' bytes in
`replycolumns`) and hand batches to handlers (`entries`). Pure: numpy, never redis."""
