package sdk

// Version is this SDK's version, sent in every event's context.library.version.
const Version = "0.1.0"

// LibraryName is the name sent in every event's context.library.name.
const LibraryName = "cartlytics-go"
