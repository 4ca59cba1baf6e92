/* ane_private.h — the private AppleNeuralEngine.framework classes we call, as protocols
 * (upstream.md §1.2). Classes are found with NSClassFromString and typed Class<Proto>; a private
 * class is never named in code, so nothing links against the private framework (ecosystem.md §2.3).
 * This header is the one place to update when Apple changes a selector: the mock in tests/mock
 * implements these same protocols, so the compiler checks both sides against it. */
#ifndef ANE_PRIVATE_H
#define ANE_PRIVATE_H

#import <Foundation/Foundation.h>
#include <IOSurface/IOSurface.h>

/* QoS passed to every call: 21 = 0x15, Darwin's QOS_CLASS_DEFAULT (upstream.md §1.3). */
#define ANE_QOS 21u

/* _ANEInMemoryModelDescriptor: holds the MIL text and the weight blobs. */
@protocol ANEInMemoryModelDescriptor <NSObject>
/* milText: UTF-8 MIL as NSData. weights: {@"@model_path/weights/x.bin": {@"offset": @0, @"data":
 * NSData}}, an empty dictionary (never nil) when there are none (upstream.md §1.5). optionsPlist:
 * nil. Returns nil on bad arguments. */
+ (id)modelWithMILText:(NSData *)milText
               weights:(NSDictionary *)weights
          optionsPlist:(id)optionsPlist;
@end

/* _ANEInMemoryModel: compile / load / evaluate / unload one program. Every BOOL must be checked. */
@protocol ANEInMemoryModel <NSObject>
+ (id)inMemoryModelWithDescriptor:(id)descriptor;
/* Hex id derived from MIL + weights; names the temp dir NSTemporaryDirectory()/<hex>/ (§1.8). */
- (NSString *)hexStringIdentifier;
- (BOOL)compileWithQoS:(unsigned int)qos options:(NSDictionary *)options error:(NSError **)error;
- (BOOL)loadWithQoS:(unsigned int)qos options:(NSDictionary *)options error:(NSError **)error;
- (BOOL)evaluateWithQoS:(unsigned int)qos
                options:(NSDictionary *)options
                request:(id)request
                  error:(NSError **)error;
- (BOOL)unloadWithQoS:(unsigned int)qos error:(NSError **)error;
@end

/* _ANEIOSurfaceObject: wraps an IOSurfaceRef so a request can carry it. */
@protocol ANEIOSurfaceObject <NSObject>
+ (id)objectWithIOSurface:(IOSurfaceRef)surface;
@end

/* _ANERequest: binds input/output surfaces for evaluation; reusable. Indices are NSArrays of
 * NSNumber tensor ordinals; weightsBuffer and perfStats are nil; procedureIndex is an NSNumber
 * object (@0), not a C integer (upstream.md §1.2). */
@protocol ANERequest <NSObject>
+ (id)requestWithInputs:(NSArray *)inputs
           inputIndices:(NSArray *)inputIndices
                outputs:(NSArray *)outputs
          outputIndices:(NSArray *)outputIndices
          weightsBuffer:(id)weightsBuffer
              perfStats:(id)perfStats
         procedureIndex:(NSNumber *)procedureIndex;
@end

/* The real class names, looked up at run time. */
#define ANE_CLASS_DESCRIPTOR "_ANEInMemoryModelDescriptor"
#define ANE_CLASS_MODEL "_ANEInMemoryModel"
#define ANE_CLASS_REQUEST "_ANERequest"
#define ANE_CLASS_IOSURFACE_OBJECT "_ANEIOSurfaceObject"

#endif /* ANE_PRIVATE_H */
